"""The single lookup of quantizers by name: register, get, serialize, deserialize.

Every quantizer class is registered once, under its CapWords class name plus explicit
aliases (the snake_case name Keras would use and the names Larq users write, such as
``"ste_sign"``). Registration also registers the class with Keras serialization under the
``quantizeml`` package, so a saved model reloads with no ``custom_objects``.
"""
import inspect
import json

import tf_keras as keras

#: name or alias -> quantizer class. Filled by :func:`register_quantizer` only.
_QUANTIZERS = {}

_KERAS_PACKAGE = "quantizeml"


class ConfigEquality:
    """Mixin for quantizer objects: equality, hash and repr from ``get_config()``.

    ``from_config(config)`` is ``cls(**config)``; two quantizers are equal when they have the
    same class and the same config.
    """

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True, default=repr)))

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


def register_quantizer(*aliases):
    """Class decorator registering a quantizer class under its name and ``aliases``.

    The class is also registered with Keras serialization under the ``quantizeml`` package
    (key ``"quantizeml>ClassName"``).

    Args:
        *aliases (str): extra names that :func:`get` resolves to the class, e.g. ``"ste_sign"``.

    Returns:
        callable: the decorator, which returns the class unchanged.

    Raises:
        ValueError: when a name or alias is already registered.

    Example:
        ```python
        @register_quantizer("my_sign")
        class MySign(BaseQuantizer):
            ...
        ```
    """
    def wrap(cls):
        if not inspect.isclass(cls):
            raise TypeError("register_quantizer expected a class. "
                            f"Received: cls={cls!r}")
        names = (cls.__name__, *aliases)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError("register_quantizer expected non-empty str aliases. "
                                f"Received: alias={name!r}")
            other = _QUANTIZERS.get(name)
            if other is not None:
                raise ValueError(f"register_quantizer expected a name not registered yet. "
                                 f"Received: name={name!r}, already registered to "
                                 f"{other.__module__}.{other.__qualname__}")
        if len(set(names)) != len(names):
            raise ValueError("register_quantizer expected distinct names. "
                             f"Received: names={names!r}")
        keras.saving.register_keras_serializable(package=_KERAS_PACKAGE)(cls)
        for name in names:
            _QUANTIZERS[name] = cls
        return cls
    return wrap


def registered_names():
    """The sorted names and aliases that :func:`get` accepts as strings.

    Returns:
        list: the registered names.
    """
    return sorted(_QUANTIZERS)


def _lookup(name, custom_objects=None):
    """The class registered under ``name``; ``custom_objects`` is searched first."""
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    cls = _QUANTIZERS.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and ">" in name:
        # A Keras registered name ("quantizeml>SteSign" or a user's "package>Name").
        cls = keras.saving.get_registered_object(name, custom_objects)
    if cls is None:
        raise ValueError(f"Quantizer identifier expected one of {registered_names()}. "
                         f"Received: identifier={name!r}")
    return cls


def _instantiate(cls, name, kwargs):
    """``cls(**kwargs)``, with a clear error when a required argument is missing."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # builtins without a signature
        return cls(**kwargs)
    missing = [p.name for p in signature.parameters.values()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in kwargs]
    if missing:
        example = ", ".join(f"{m}=..." for m in missing)
        raise ValueError(f"Quantizer {name!r} expected its required arguments {missing}, "
                         f"e.g. get({name!r}, {example}). Received: kwargs={kwargs!r}")
    return cls(**kwargs)


def serialize(initializer):
    """Returns the JSON-native config of a quantizer (or of a registered function).

    The argument is named ``initializer`` as in ``keras.quantizers.serialize(initializer)``.

    Args:
        initializer (object): a quantizer instance, a Keras-registered function, or None.

    Returns:
        dict: ``{"module", "class_name", "config", "registered_name"}`` as Keras writes it, or
        None for None.

    Raises:
        TypeError: when the object has no ``get_config`` and is not a registered function.
    """
    quantizer = initializer
    if quantizer is None:
        return None
    if inspect.isclass(quantizer):
        raise TypeError("serialize expected a quantizer instance, not a class. "
                        f"Received: initializer={quantizer!r}")
    if inspect.isfunction(quantizer):
        registered_name = keras.saving.get_registered_name(quantizer)
        if keras.saving.get_registered_object(registered_name) is not quantizer:
            raise TypeError("serialize expected a function registered with "
                            "keras.saving.register_keras_serializable. "
                            f"Received: initializer={quantizer!r}")
    elif not hasattr(quantizer, "get_config"):
        raise TypeError("serialize expected an object with get_config or a registered "
                        f"function. Received: initializer={quantizer!r}")
    return keras.saving.serialize_keras_object(quantizer)


def deserialize(config, custom_objects=None):
    """Returns a quantizer from its name or its config.

    Args:
        config (str or dict): a registered name (``"ste_sign"``) or a dict with a
            ``class_name`` (a registered name or alias) and a ``config``.
        custom_objects (dict, optional): extra name -> class mapping, searched first.
            Defaults to None.

    Returns:
        object: the quantizer (a function for a serialized registered function).

    Raises:
        ValueError: for an unknown name; the message lists the registered names.
        TypeError: when config is neither a str nor a dict.
    """
    if isinstance(config, str):
        return _instantiate(_lookup(config, custom_objects), config, {})
    if not isinstance(config, dict) or "class_name" not in config:
        raise TypeError("deserialize expected a str or a dict with a 'class_name'. "
                        f"Received: config={config!r}")
    if config["class_name"] == "function":
        # A function registered with Keras: its config is its registered name.
        return _lookup(config.get("config"), custom_objects)
    name = config.get("registered_name") or config["class_name"]
    if name not in _QUANTIZERS and keras.saving.get_registered_object(name, custom_objects) \
            is None:
        name = config["class_name"]
    cls = _lookup(name, custom_objects)
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier, **kwargs):
    """Retrieves a quantizer from an identifier.

    Args:
        identifier (None, str, dict, class or callable): None returns None; a str is a
            registered name or alias, instantiated with ``kwargs``; a dict is a serialized
            quantizer; a class is instantiated with ``kwargs``; an instance or any other
            callable (a function) is returned as is.
        **kwargs: constructor arguments used for a str or class identifier.

    Returns:
        object: the quantizer, or None.

    Raises:
        ValueError: for an unknown name (the message lists the registered names), or when a
            required constructor argument is missing.
        TypeError: for any other identifier.

    Example:
        ```python
        get("ste_sign")                       # SteSign(clip_value=1.0)
        get("ste_sign", clip_value=0.5)       # SteSign(clip_value=0.5)
        get({"class_name": "DoReFa", "config": {"k_bit": 4, "mode": "weights"}})
        ```
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _instantiate(_lookup(identifier), identifier, kwargs)
    if kwargs and not inspect.isclass(identifier):
        raise TypeError("get expected kwargs only with a str or class identifier. "
                        f"Received: identifier={identifier!r}, kwargs={kwargs!r}")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier):
        return _instantiate(identifier, identifier.__name__, kwargs)
    if callable(identifier):
        return identifier
    raise TypeError("Quantizer identifier expected None, a str, a dict, a class or a callable. "
                    f"Received: identifier={identifier!r}")

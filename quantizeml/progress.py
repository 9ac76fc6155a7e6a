"""A progress bar for the command line: drawn on a terminal, silent in pipes and files.

``quantizeml`` commands and the demo report long steps with :class:`ProgressBar`. The bar is
redrawn in place (``\\r``) only when its stream is a terminal; in a pipe, a file or a captured
stream it writes nothing, so logs hold no bar characters. Lines written through
:meth:`ProgressBar.write` go to the stream either way (above the bar on a terminal).

No dependency beyond the standard library, and nothing happens at import.
"""
import shutil
import sys
import threading
import time

__all__ = ["ProgressBar", "is_terminal"]


def is_terminal(stream):
    """Whether ``stream`` is an interactive terminal (``stream.isatty()``, False on error)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):   # no isatty, or a closed stream
        return False


class ProgressBar:
    """A one-line progress bar, redrawn in place on a terminal and silent elsewhere.

    ``label [#########.........] 3/10 status 12 s``: ``update()`` advances it, ``write()``
    prints a line above it, ``hidden()`` takes it off the screen while something else draws
    (a Keras progress bar), ``close()`` erases it. With ``tick`` seconds, a daemon thread
    redraws it every ``tick`` seconds, so that the elapsed time moves during a long step.

    Args:
        total (int): the number of steps.
        label (str, optional): the text before the bar. Defaults to "".
        stream (file, optional): where to draw. Defaults to None (``sys.stderr`` when the bar
            is created).
        enabled (bool, optional): draw the bar. Defaults to None (when ``stream`` is a
            terminal).
        width (int, optional): the bar's width in characters. Defaults to 30.
        tick (float, optional): seconds between redraws by a background thread. Defaults to
            None (redrawn on updates only).

    Example:
        ```python
        with ProgressBar(3, "quantize") as bar:
            bar.update(0, "sanitizing")
            ...
            bar.update(1, "calibrating")
        ```
    """

    def __init__(self, total, label="", stream=None, enabled=None, width=30, tick=None):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_terminal(self.stream) if enabled is None else bool(enabled)
        self.width = width
        self.count = 0
        self.status = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._visible = False
        self._hidden = 0
        self._closed = False
        self._lock = threading.RLock()
        self._ticker = None
        if self.enabled and tick:
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, args=(tick,), daemon=True)
            self._ticker.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def elapsed(self):
        """Seconds since the bar was created."""
        return time.monotonic() - self._start

    def render(self):
        """The bar's text (without ``\\r``), cut to the terminal's width."""
        filled = int(self.width * min(self.count, self.total) / self.total)
        parts = [self.label] if self.label else []
        parts.append(f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total}")
        if self.status:
            parts.append(self.status)
        parts.append(f"{self.elapsed:.0f} s")
        text = " ".join(parts)
        columns = shutil.get_terminal_size((80, 24)).columns
        return text[:max(columns - 1, 10)]

    def update(self, n=1, status=None):
        """Advances the bar by ``n`` steps (0 to only change the status) and redraws it.

        Args:
            n (int, optional): steps done since the last update. Defaults to 1.
            status (str, optional): the text after the counter. Defaults to None (unchanged).
        """
        with self._lock:
            self.count = min(self.count + n, self.total)
            changed = status is not None and status != self.status
            if status is not None:
                self.status = status
            now = time.monotonic()
            if changed or self.count == self.total or now - self._last_draw >= 0.1:
                self._draw()

    def write(self, line):
        """Prints ``line`` to the stream (above the bar on a terminal), in pipes too."""
        with self._lock:
            self._erase()
            self.stream.write(f"{line}\n")
            self.stream.flush()
            self._draw()

    def hidden(self):
        """A context manager that keeps the bar off the screen (another bar draws meanwhile)."""
        return _Hidden(self)

    def close(self):
        """Erases the bar and stops its thread; the lines written stay."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._erase()
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join(timeout=1.0)

    def _draw(self):
        if not self.enabled or self._closed or self._hidden:
            return
        self.stream.write(f"\r{self.render()}\x1b[K")
        self.stream.flush()
        self._visible = True
        self._last_draw = time.monotonic()

    def _erase(self):
        if self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._visible = False

    def _tick(self, seconds):
        while not self._stop.wait(seconds):
            with self._lock:
                self._draw()


class _Hidden:
    def __init__(self, bar):
        self.bar = bar

    def __enter__(self):
        with self.bar._lock:
            self.bar._erase()
            self.bar._hidden += 1
        return self.bar

    def __exit__(self, *exc):
        with self.bar._lock:
            self.bar._hidden -= 1
            self.bar._draw()
        return False

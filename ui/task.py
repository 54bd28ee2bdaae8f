"""Background work for the dock: a QgsTask that only calls core functions and writes files.

QGIS's rules for tasks: run() executes in a worker thread and touches no layer, project or
widget; it keeps any exception instead of raising it; finished() runs in the main thread and
is where results are reported and layers loaded. Cancelling from the dock (task.cancel()) and
from QGIS's task manager set the same flag, which the core polls through `is_canceled`.
"""
import time
import traceback

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.cancel import Canceled


class CoreTask(QgsTask):
    """Runs `work(progress, is_canceled)` in the background and hands the outcome to `on_done`.

    `progress(fraction, message)` sets the task's progress (QGIS's status bar and the task
    manager show it) and emits `message` for the dock's log; `on_done(task)` is called from
    finished() in the main thread, with `result`, `error`, `error_trace` and `canceled` set.
    """

    # Emitted from the worker thread; Qt queues it to receivers living in the main thread.
    message = pyqtSignal(str)

    def __init__(self, description, work, on_done=None, flags=QgsTask.CanCancel):
        super().__init__(description, flags)
        self.work = work
        self.on_done = on_done
        self.result = None
        self.error = None  # the exception raised by `work`, kept for the main thread
        self.error_trace = ""
        self.canceled = False  # True when the run stopped because the user asked it to
        self.seconds = 0.0
        self._last_message = None

    # --- worker thread ---
    def run(self):
        start = time.monotonic()
        try:
            self.result = self.work(self._progress, self.isCanceled)
            return not self.isCanceled()
        except Canceled:
            self.canceled = True
            return False
        except Exception as exc:  # noqa: BLE001 (kept and reported by finished(), as QGIS requires)
            if self.isCanceled():
                self.canceled = True
            self.error = exc
            self.error_trace = traceback.format_exc()
            return False
        finally:
            self.seconds = time.monotonic() - start

    def _progress(self, fraction, text=None):
        self.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        if text and text != self._last_message:
            self._last_message = text
            self.message.emit(str(text))

    # --- main thread ---
    def finished(self, ok):
        if not ok and self.isCanceled():
            self.canceled = True
        if self.on_done is not None:
            self.on_done(self)

    def cancel(self):
        self.canceled = True
        super().cancel()

"""A pytest plugin that only sets Qt's platform before pytest-qgis starts QGIS.

pytest-qgis creates the QgsApplication in its pytest_load_initial_conftests hook, before any
conftest.py is imported, so a conftest cannot set QT_QPA_PLATFORM in time: on a machine without a
display, `pytest tests/test_x.py` aborted (SIGABRT, "could not connect to display"). pyproject's
addopts load this module with `-p alignkit.tests.qt_env`; plugins named by -p are imported before
that hook runs. An explicit QT_QPA_PLATFORM (e.g. xcb, to watch a test) is kept.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

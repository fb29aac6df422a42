"""Helpers of the platform's own tests and benchmarks (not shipped: plugin authors use ``jepa_platform.testing``).

Imported as ``support.<module>`` in tests (``tests/`` is on ``sys.path`` there, and conftest puts it on the
``PYTHONPATH`` of the ``jepa`` processes that tests start, so that their configs can name these classes).
"""

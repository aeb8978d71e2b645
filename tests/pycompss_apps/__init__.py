"""PyCOMPSs programs in the shape of the PyCOMPSs tutorials and of the COMPSs runtime's
Python tests, written for mesh's tests (tests/test_pycompss_compat.py): each imports
only ``pycompss`` (and the standard library) and runs unmodified through ``mesh run
--pycompss``; each prints ``RESULT <json>`` lines the tests check against a sequential
computation or the values PyCOMPSs documents."""

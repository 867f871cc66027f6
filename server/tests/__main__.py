"""Run the server's own tests: python -m server.tests [-v] (from the project folder)."""
import os
import sys
import unittest

from server import testing

here = os.path.dirname(os.path.abspath(__file__))
verbosity = 2 if '-v' in sys.argv[1:] else 1
suite = unittest.defaultTestLoader.discover(here, top_level_dir=os.path.dirname(os.path.dirname(here)))
result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
passed = result.testsRun - failed - len(result.skipped)
print(f'{passed} passed, {failed} failed, {len(result.skipped)} skipped')
testing.finish()
sys.exit(1 if failed or not result.testsRun else 0)

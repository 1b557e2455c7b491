"""colod's test suite.

The QMP client needs Twisted's asyncio reactor, installed through colod's
own installer, which keeps the reactor's loop (colod.reactor).  Plain
``python -m twisted.trial tests`` gets it here, since trial imports the test
modules before it first uses the reactor; pytest from tests/conftest.py's
``pytest_configure``, before pytest-twisted's ``--reactor=asyncio``
(setup.cfg) finds it installed and takes it.
"""

from colod.reactor import use_asyncio_reactor

use_asyncio_reactor()

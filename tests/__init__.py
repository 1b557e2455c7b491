"""colod's test suite.

The QMP client needs Twisted's asyncio reactor.  pytest gets it from
``--reactor=asyncio`` (setup.cfg); plain ``python -m twisted.trial tests``
gets it here, since trial imports the test modules before it first uses the
reactor.
"""

from colod.reactor import use_asyncio_reactor

use_asyncio_reactor()

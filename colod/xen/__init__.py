# -*- test-case-name: tests.xen -*-
"""
Driving Xen's own save/restore machinery: L{helper_messages}, the sans-IO
codec of libxl-save-helper's message protocol, and L{save_helper}, the
Twisted driver that runs the helper with colod in libxl's place.  Nothing is
imported here, so that the codec comes without the driver's Twisted imports.
"""

"""What the driver and the agent both know of the XenServer host they serve.

The small base both sides stand on, beside ``rpc``: the options they read
(:mod:`.conf`), the XAPI session helper (:mod:`.xapi`), the marks they
leave on XAPI objects (:mod:`.marks`) and the teardown of VBDs and VDIs
(:mod:`.teardown`). It imports ``rpc``'s typed errors and nothing else of
the project: never the driver, never the agent.
"""

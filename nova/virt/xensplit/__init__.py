"""``compute_driver = xensplit.XenSplitDriver`` in nova.conf loads this.

Nova imports ``nova.virt.<compute_driver>`` and nothing else, so an
out-of-tree driver must have a name under ``nova.virt``. This module is all
nova-xen-split puts there: the class lives in ``nova_xen_split.virt.driver``.
"""

from nova_xen_split.virt.driver import XenSplitDriver

__all__ = ["XenSplitDriver"]

"""The driver as Nova loads it: a ``nova.virt.driver.ComputeDriver``.

Only this package (and the ``nova.virt.xensplit`` name that re-exports its
class) imports Nova; everything it drives underneath is Nova-free.
"""

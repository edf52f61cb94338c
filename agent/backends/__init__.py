"""The agent's two ways of touching disks, picked once at startup."""


def make_backend(ctx):
    """The backend for ``ctx.mode`` (``in_guest`` or ``independent``)."""
    if ctx.mode == "in_guest":
        from agent.backends import in_guest
        return in_guest.InGuestBackend(ctx)
    if ctx.mode == "independent":
        from agent.backends import independent
        return independent.IndependentBackend(ctx)
    raise ValueError("unknown agent mode %r" % (ctx.mode,))

"""What is built per scope: ``request_scoped``, ``owned``, ``shareable`` and the shared-state walk.

Import the public names from :mod:`isolation`; this package holds their code.
``_graph`` is the pure shared-state walk (no scopes, no threads), ``_index``
the index of the live scopes' walked objects, ``_request_scoped`` the
exactly-once-per-scope wrapper, ``_owned`` the ownership guard and
``_shareable`` the declarations of objects every user may share.
"""

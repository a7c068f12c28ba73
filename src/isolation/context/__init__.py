"""Who is asking, and until when: contexts, scopes, deadlines.

Import the public names from :mod:`isolation`; this package holds their code.
"""

"""The composition root: the ``citysense`` command and one runner per deployable.

Nothing else in the project imports this package; it imports everything.
The rest of ``citysense/`` is the ground floor (records, errors, settings
base, metrics) and imports nothing from the packages above it.
"""

"""The local Hub, in four modules: :mod:`.app` (the aiohttp web app), :mod:`.faults` (its fault knobs and
bandwidth limit), :mod:`.log` (its request log) and :mod:`.client` (:class:`~.client.LocalHub`, which runs
the app in a thread or a subprocess and drives it). ``python -m hub_prefetch.testing.hub`` serves a store
by hand.

Import the names from :mod:`hub_prefetch.testing` (``from hub_prefetch.testing import LocalHub``); this
package imports nothing itself, so :mod:`.log` does not pull in aiohttp.
"""

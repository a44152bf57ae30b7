"""Worker targets and faults only this project's tests and benchmarks use (not part of
:mod:`hub_prefetch.testing`):

``fault_targets``  loads and prefetches inside an injected fault (a broken ``flock``, a umask, a held
                   repo lock, a full disk), dispatched by name so one crew of workers runs any of them
``slowfs``         a slow-filesystem knob: writes to ``refs/`` wait between truncating and writing
``dist_ranks``     the rank harness of the torch.distributed tests: join a gloo group, time a phase
                   (prefetch, then load), build the ranks' pool and read back their records
``probes``         stdlib-only targets that exercise the worker harness itself
"""

"""The launcher on the oldest torch elastic agent that pyproject.toml allows.

The first GPU run (torch 2.11) found the launcher passing arguments that only newer agents
take: ``LocalElasticAgent(shutdown_timeout=...)`` and ``_shutdown(timeout=...)``. Here a real
launched job runs with the agent's signatures narrowed to torch 2.11's (a ``sitecustomize``
in the launcher's process wraps them), so a call that 2.11 would refuse fails the test on
any torch.
"""
from __future__ import annotations

import json
import textwrap

from tests.launcher.util import SCRIPTS, clean_env, finish

NARROW_AGENT = textwrap.dedent('''
    import signal
    from torch.distributed.elastic.agent.server import local_elastic_agent as _lea

    _init, _shutdown = _lea.LocalElasticAgent.__init__, _lea.LocalElasticAgent._shutdown

    def __init__(self, spec, logs_specs, start_method="spawn", exit_barrier_timeout=300,
                 log_line_prefix_template=None):  # torch 2.11: no shutdown_timeout
        _init(self, spec, logs_specs, start_method=start_method, exit_barrier_timeout=exit_barrier_timeout,
              log_line_prefix_template=log_line_prefix_template)

    def _shutdown_211(self, death_sig=signal.SIGTERM, is_restart=False):  # torch 2.11: no timeout
        _shutdown(self, death_sig)

    _lea.LocalElasticAgent.__init__ = __init__
    _lea.LocalElasticAgent._shutdown = _shutdown_211
''')


def test_launcher_runs_on_torch_211_agent_signatures(tmp_path, launched):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NARROW_AGENT)
    out = tmp_path / "out"
    out.mkdir()
    env = clean_env(OUT_DIR=str(out), PYTHONPATH=f"{site}:{clean_env().get('PYTHONPATH', '')}".rstrip(":"))
    proc = launched(["--cpus", "2", str(SCRIPTS / "allreduce.py")], env=env)
    code, stdout, stderr = finish(proc, 120)
    assert code == 0, stderr[-3000:]
    assert json.loads((out / "rank1.json").read_text())["sum"] == 3.0

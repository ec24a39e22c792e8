"""The gate's own parts: the import rewriting, the deferred imports and the classification."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.lightning_suite import REPO, SUPPORT
from tests.lightning_suite.classify import apply_overrides, classify
from tests.lightning_suite.prepare import lenient_imports, rewrite_imports


def test_rewrite_imports_as_lightnings_ci_does():
    text = "import lightning.pytorch as pl\nfrom lightning.fabric.utilities import x\n" \
           "mock.patch('lightning.pytorch.trainer.trainer.foo')\nimport lightning_utilities\n"
    assert rewrite_imports(text) == "import pytorch_lightning as pl\nfrom lightning_fabric.utilities import x\n" \
        "mock.patch('pytorch_lightning.trainer.trainer.foo')\nimport lightning_utilities\n"


def test_lenient_imports_keep_line_numbers_and_fail_only_on_use(tmp_path):
    source = textwrap.dedent("""\
        import os
        from pytorch_lightning import (
            Trainer,
            NoSuchThing as Other,
        )
        from pytorch_lightning.no_such_module import _private
        from pytorch_lightning.utilities.imports import _TORCH_GREATER_EQUAL_2_0
        from pytorch_lightning.no_such_module import Stage

        PARAMS = [Stage.TESTING.value]

        class Sub(_private):
            pass

        def use():
            return Other()
        """)
    out = lenient_imports(source)
    assert len(out.splitlines()) == len(source.splitlines())
    (tmp_path / "mod.py").write_text(out)
    check = textwrap.dedent("""\
        import mod
        assert mod.Trainer.__name__ == "Trainer" and mod._TORCH_GREATER_EQUAL_2_0 is True
        try:
            mod.use()
        except ImportError as e:
            assert "NoSuchThing" in str(e), e
        else:
            raise SystemExit("no ImportError")
        try:
            mod.PARAMS[0] == "test"
        except ImportError as e:
            assert "no_such_module" in str(e), e
        else:
            raise SystemExit("no ImportError")
        try:
            mod.Sub()
        except ImportError as e:
            assert "no_such_module" in str(e), e
        else:
            raise SystemExit("no ImportError")
        """)
    path = f"{tmp_path}:{SUPPORT}:{REPO / 'tests' / 'conformance' / 'shim'}"
    proc = subprocess.run([sys.executable, "-c", check], env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _cls(message, text=""):
    return classify({"message": message, "text": text})


def test_classify_sorts_failures_into_a_b_c():
    assert _cls("ImportError: cannot import name '_Loop' from 'pytorch_lightning.loops' (deferred)")[0] == "A"
    assert _cls("ImportError: No module named 'distengine.trainer.connectors' (deferred until use)") == \
        ("A", "module trainer.connectors")
    assert _cls("ImportError: No module named 'distengine.loggers.csv_logs' (deferred until use)") == \
        ("B", "module loggers.csv_logs")
    assert _cls("AttributeError: 'Trainer' object has no attribute 'fit_loop'") == ("A", "attribute Trainer.fit_loop")
    assert _cls("AttributeError: 'CSVLogger' object has no attribute 'experiment'") == \
        ("B", "attribute CSVLogger.experiment")
    assert _cls("TypeError: Trainer.__init__() got an unexpected keyword argument 'foo'")[0] == "B"
    assert _cls("AttributeError: 'NoneType' object has no attribute 'step'")[0] == "C"
    assert _cls("AssertionError: assert 3 == 4") == ("C", "AssertionError: assert N == N")
    assert _cls("boom", "lsuite_support.ReachesLightningInternals: the suite's fixture")[0] == "A"


def test_override_ids_with_brackets_match_exactly():
    rules = [("f.py::t[1]", "C", "why"), ("g.py::u*", "A", "wild")]
    assert apply_overrides("f.py::t[1]", "B", "c", rules) == ("C", "c", "why")
    assert apply_overrides("g.py::u[x]", "C", "c", rules) == ("A", "c", "wild")

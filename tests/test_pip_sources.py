import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("pip_sources", Path(__file__).parents[1] / "scripts" / "pip_sources.py")
pip_sources = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pip_sources)


def test_pip_configuration_becomes_uv_options():
    lines = [
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n",
        "global.constraint='/etc/xdg/pip/constraints.txt'\n",
        "global.extra-index-url='file:///opt/pypi/simple https://download.pytorch.org/whl/cpu'\n",
        "global.find-links='/opt/wheels'\n",
        ":env:.index-url='https://mirror.example/simple'\n",
        "install.index-url='https://other.example/simple'\n",
        ":env:.find-links='/opt/wheels /srv/wheels'\n",
    ]
    assert pip_sources.uv_options(lines) == [
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "https://download.pytorch.org/whl/cpu",
        "--find-links", "/opt/wheels",
        "--index-url", "https://mirror.example/simple",  # the first listed; a second index would replace PyPI twice
        "--find-links", "/srv/wheels",
    ]
    assert pip_sources.uv_options([]) == []

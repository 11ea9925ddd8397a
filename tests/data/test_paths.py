from __future__ import annotations

from taps_ray.data.paths import data_root


def test_env_var_wins_even_when_missing(monkeypatch, tmp_path):
    missing = tmp_path / "nope"
    monkeypatch.setenv("TAPS_DATA_DIR", str(missing))
    assert data_root() == missing


def test_shared_data_under_cwd_is_found(monkeypatch, tmp_path):
    monkeypatch.delenv("TAPS_DATA_DIR", raising=False)
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert data_root().resolve() == (tmp_path / "work" / "shared" / "data").resolve()


def test_shared_data_beside_cwd_is_found_first(monkeypatch, tmp_path):
    monkeypatch.delenv("TAPS_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "main" / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "main")
    assert data_root().resolve() == (tmp_path / "shared" / "data").resolve()

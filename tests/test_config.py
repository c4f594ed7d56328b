"""segtut.config: one data directory and one offline rule for every module."""

import pytest

from segtut import config


def test_data_dir_is_the_env_folder_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path))
    assert config.data_dir() == tmp_path
    monkeypatch.delenv(config.DATA_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert config.data_dir() == tmp_path / "cache" / "segtut"


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_every_on_spelling_switches_the_network_off(monkeypatch, value):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(config.OFFLINE_ENV, value)
    assert config.is_offline()
    assert config.OFFLINE_ENV in config.offline_reason()


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
def test_every_off_spelling_leaves_it_on(monkeypatch, value):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(config.OFFLINE_ENV, value)
    assert not config.is_offline()


def test_hugging_face_switch_counts_too(monkeypatch):
    monkeypatch.delenv(config.OFFLINE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in config.offline_reason()


def test_a_typo_is_an_error_not_a_guess(monkeypatch):
    monkeypatch.setenv(config.OFFLINE_ENV, "ture")
    with pytest.raises(ValueError, match="SEGTUT_OFFLINE"):
        config.offline_reason()

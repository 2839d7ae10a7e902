"""Environment configuration: the typed model and its loader."""

from pytest_hokmdb.config.loader import LoadedConfig, find_project_root, load_config
from pytest_hokmdb.config.model import ENVIRONMENTS, PROTECTED_ENVIRONMENTS, HokmdbConfig

__all__ = ["ENVIRONMENTS", "PROTECTED_ENVIRONMENTS", "HokmdbConfig", "LoadedConfig", "find_project_root", "load_config"]

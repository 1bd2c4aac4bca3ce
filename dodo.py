"""doit entry point: the bakery's tasks come from sysext_bakery.tasks (see docs/architecture.md)."""
from pathlib import Path

from sysext_bakery import tasks
ROOT = Path(__file__).resolve().parent
DOIT_CONFIG = tasks.doit_config(ROOT)


def task_bakery():
    """fetch/stage/pack per image, build groups, sums, inspect, release"""
    yield from tasks.generate(ROOT)

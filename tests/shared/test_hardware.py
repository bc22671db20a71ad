import pathlib
import re

import pytest

from shared.hardware import processor_name


def test_the_processor_is_named_as_linux_reports_it():
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    names = re.findall(r"(?im)^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text())
    if not names:
        pytest.skip("/proc/cpuinfo names no model")
    assert processor_name("cpu") == names[0]

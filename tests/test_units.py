"""Sizes and durations as the asset metadata shows them to operators."""

import math

import pytest

from hotpot_orchestration.platform.units import format_bytes, format_duration

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * KiB + 51, "10.0 KiB"),
        (MiB - 1, "1.0 MiB"),  # 1023.999 KiB rounds into the next unit, not to "1024.0 KiB"
        (MiB, "1.0 MiB"),
        (int(1.25 * MiB), "1.2 MiB"),  # halfway rounds to even, as Python's own formatting does
        (int(2.26 * MiB), "2.3 MiB"),
        (700 * MiB, "700.0 MiB"),
        (GiB - 1, "1.0 GiB"),
        (GiB, "1.0 GiB"),
        (int(1.2 * GiB), "1.2 GiB"),
        (1023 * GiB, "1023.0 GiB"),
        (TiB, "1.0 TiB"),
        (5 * TiB + 512 * GiB, "5.5 TiB"),
        (2048 * TiB, "2048.0 TiB"),  # TiB is the largest unit
        (2**70, "1073741824.0 TiB"),
    ],
)
def test_sizes_are_binary_units_with_one_decimal_from_kib(size, text):
    assert format_bytes(size) == text


def test_a_negative_or_fractional_size_is_refused():
    with pytest.raises(ValueError, match="negative: -1"):
        format_bytes(-1)
    with pytest.raises(TypeError):
        format_bytes(1.5)
    with pytest.raises(TypeError):
        format_bytes(True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0 s"),
        (0.04, "0.0 s"),
        (0.05001, "0.1 s"),
        (3.4, "3.4 s"),
        (3.44, "3.4 s"),
        (59.9, "59.9 s"),
        (59.96, "1 min 0 s"),  # never "60.0 s"
        (60, "1 min 0 s"),
        (61.4, "1 min 1 s"),
        (61.5, "1 min 2 s"),
        (252, "4 min 12 s"),
        (3599.4, "59 min 59 s"),
        (3599.5, "1 h 0 min 0 s"),
        (3600, "1 h 0 min 0 s"),
        (2 * 3600 + 5 * 60, "2 h 5 min 0 s"),
        (3 * 86400 + 62, "72 h 1 min 2 s"),
        (10**7, "2777 h 46 min 40 s"),
    ],
)
def test_durations_are_tenths_of_a_second_then_minutes_and_hours(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-0.1, -60, math.inf, math.nan])
def test_a_negative_or_endless_duration_is_refused(seconds):
    with pytest.raises(ValueError, match="finite number of seconds"):
        format_duration(seconds)


def test_a_duration_is_a_number():
    with pytest.raises(TypeError):
        format_duration("3")

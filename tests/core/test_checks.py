"""The layers' shared argument checks: kinds, finiteness, ranges, feature maps, settings."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from energymask._checks import (
    check_bool,
    check_input,
    check_int,
    check_range,
    check_real,
    is_int,
    replaced,
)


def test_is_int_takes_python_and_numpy_ints_but_not_bools_or_floats():
    assert is_int(3) and is_int(np.int64(-2))
    assert not is_int(True) and not is_int(2.0) and not is_int("2")


def test_check_real_accepts_finite_numbers():
    for value in (0, -1.5, 2, np.float32(0.25)):
        check_real("x", value, "a number")


@pytest.mark.parametrize("value", [True, None, "0.5", torch.tensor(0.5)])
def test_check_real_refuses_other_kinds_naming_the_type(value):
    with pytest.raises(TypeError, match=rf"^rate must be a float in \[0, 1\), but got .* "
                                        rf"\({type(value).__name__}\)$"):
        check_real("rate", value, "a float in [0, 1)")


def test_check_real_without_the_type_name():
    with pytest.raises(TypeError, match=r"^rate must be a real number, but got 'a'$"):
        check_real("rate", "a", "a real number", type_name=False)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_real_refuses_nan_and_inf(value):
    with pytest.raises(ValueError, match=rf"^rate must be finite, but got {value}$"):
        check_real("rate", value, "a float")
    with pytest.raises(ValueError, match=r"^rate must be finite \(not NaN or Inf\), but got "):
        check_real("rate", value, "a float", finite="finite (not NaN or Inf)")


def test_check_int_refuses_bools_and_floats():
    check_int("n", 4, "an int >= 1")
    with pytest.raises(TypeError, match=r"^n must be an int >= 1, but got True \(bool\)$"):
        check_int("n", True, "an int >= 1")
    with pytest.raises(TypeError, match=r"^n must be a positive int, but got 2\.0$"):
        check_int("n", 2.0, "a positive int", type_name=False)


def test_check_range_says_what_is_allowed_as_str_or_repr():
    check_range("p", 0.5, "in [0, 1)", lambda v: 0 <= v < 1)
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\), but got 1\.5$"):
        check_range("p", np.float64(1.5), "in [0, 1)", lambda v: 0 <= v < 1)
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\), but got np\.float64\(1\.5\)$"):
        check_range("p", np.float64(1.5), "in [0, 1)", lambda v: 0 <= v < 1, repr_value=True)


def test_check_bool():
    check_bool("flag", False)
    with pytest.raises(TypeError, match=r"^flag must be a bool, but got 1$"):
        check_bool("flag", 1)


def test_check_input_takes_floating_feature_maps_only():
    check_input(torch.zeros(1, 2, 3, 3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"^x must be a Tensor \(B, C, H, W\), but got list$"):
        check_input([1.0])
    with pytest.raises(ValueError, match=r"^x must be 4D \(B, C, H, W\), but got shape \(2, 3\)$"):
        check_input(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"^x must be a floating point tensor, but got torch.int64"):
        check_input(torch.zeros(1, 1, 2, 2, dtype=torch.long))


@dataclasses.dataclass(frozen=True)
class Knobs:
    a: int = 1
    b: float = 0.5

    def __post_init__(self):
        check_int("a", self.a, "an int")


def test_replaced_starts_from_the_defaults_or_the_given_settings_and_checks_again():
    kw = dict(a_class="a Knobs", label="knob", first="a")
    assert replaced(Knobs, None, {}, **kw) == Knobs()
    assert replaced(Knobs, Knobs(a=3), {"b": 2.0}, **kw) == Knobs(a=3, b=2.0)
    with pytest.raises(TypeError, match=r"^a must be an int, but got 1\.5"):
        replaced(Knobs, None, {"a": 1.5}, **kw)


def test_replaced_refuses_other_settings_and_unknown_names():
    kw = dict(a_class="a Knobs", label="knob", first="a")
    with pytest.raises(TypeError, match=r"^settings must be a Knobs or None, but got dict; "
                                        r"pass a=\.\.\. and the others by name$"):
        replaced(Knobs, {"a": 2}, {}, **kw)
    with pytest.raises(TypeError, match=r"^unknown knob setting\(s\) \['c', 'z'\]; "
                                        r"the settings are \['a', 'b'\]$"):
        replaced(Knobs, None, {"z": 1, "c": 2}, **kw)

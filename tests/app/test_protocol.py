"""The one evaluation protocol: defaults, checks, round trip through evaluation.json."""

import pytest

from energymask.lightning_modules.app.protocol import EvaluationProtocol


def test_defaults_and_round_trip():
    protocol = EvaluationProtocol()
    assert (protocol.steps, protocol.perturbations_per_eval) == (17, 16)  # unified (issue 23)
    assert protocol.orderings == ("energy", "magnitude", "random")
    values = protocol.to_dict()
    assert values["fractions"] == [0.0, 0.1, 0.25, 0.5]  # plain lists for JSON
    assert EvaluationProtocol.from_dict(values) == protocol
    with pytest.raises(ValueError, match=r"unknown evaluation protocol settings \['nope'\]"):
        EvaluationProtocol.from_dict({**values, "nope": 1})


@pytest.mark.parametrize("kwargs, match", [
    ({"orderings": ("energy", "saliency")}, r"orderings must be a non-empty selection of "
                                            r"\['energy'.*but got \['energy', 'saliency'\]"),
    ({"orderings": ()}, r"orderings must be a non-empty selection"),
    ({"placements": ("corner",)}, r"placements must be a non-empty selection of \['random', "
                                  r"'object'\], but got \['corner'\]"),
    ({"deletion_protocol": "hard"}, r"deletion_protocol must be one of \['binary', 'soft'\], "
                                    r"but got 'hard'"),
    ({"steps": 1}, r"steps must be >= 2, an int, but got 1"),
    ({"steps": 2.0}, r"steps must be >= 2, an int, but got 2.0"),
    ({"patch_size": True}, r"patch_size must be >= 1, an int, but got True"),
    ({"batch_size": 0}, r"batch_size must be >= 1"),
    ({"perturbations_per_eval": 0}, r"perturbations_per_eval must be >= 1"),
    ({"deletion_samples": 0}, r"deletion_samples must be None or an int >= 1, but got 0"),
    ({"fractions": (0.0, 1.5)}, r"fractions must be values in \[0, 1\], but got \[0.0, 1.5\]"),
    ({"fractions": ()}, r"fractions must be values in \[0, 1\], but got \[\]"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvaluationProtocol(**kwargs)


def test_sparse_must_be_a_bool():
    assert EvaluationProtocol(sparse=True).to_dict()["sparse"] is True
    with pytest.raises(TypeError, match=r"sparse must be a bool, but got 1"):
        EvaluationProtocol(sparse=1)

"""The parser's plain values: the layer defaults equal the layers' own."""

import inspect

from energymask.ersm import ErsmSettings
from energymask.lightning_modules.app.options import ERSM_DEFAULTS, PBEDROPOUT_DEFAULTS
from energymask.pbedropout import PBEDropoutSettings


def test_layer_defaults_are_the_layers_own():
    for cls, table in ((ErsmSettings, ERSM_DEFAULTS), (PBEDropoutSettings, PBEDROPOUT_DEFAULTS)):
        parameters = inspect.signature(cls).parameters
        assert {name: parameters[name].default for name in table} == table, cls.__name__

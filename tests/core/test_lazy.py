"""Package names imported on first use: nothing heavy at import, every export resolves."""

import pytest

import energymask
import energymask.lightning_modules as plugin


def test_importing_the_packages_imports_no_torch(heavy_imports):
    assert heavy_imports("import energymask, energymask.lightning_modules") == []


@pytest.mark.parametrize("package", [energymask, plugin])
def test_every_export_resolves_and_unknown_names_fail(package):
    for name in package.__all__:
        assert getattr(package, name).__name__ == name
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match=r"has no attribute 'nope'"):
        package.nope  # noqa: B018


def test_an_export_named_like_its_module_stays_the_export():
    import energymask.mask_quality  # noqa: F401 - the sub-module of the same name

    assert callable(energymask.mask_quality) and energymask.mask_quality.__name__ == "mask_quality"

"""Every saved task (annotator, denoiser, imputer, perturbation predictor) records the sha256 of its files and
settings, checked on load: an edited one is refused naming the file; one saved before the checksums loads with a
warning. (The annotator's own checks are in test_annotation.py.)"""

from __future__ import annotations

import json
import re

import pytest

from opencellplm.tasks import Denoiser

from .conftest import small_model

GENES = [f"GENE{i}" for i in range(40)]


@pytest.fixture
def saved(tmp_path):
    Denoiser.from_pretrained(small_model(GENES)).save(tmp_path / "denoiser")
    return tmp_path / "denoiser"


def rewrite(path, change):
    settings = json.loads(path.read_text())
    change(settings)
    path.write_text(json.dumps(settings, indent=2))


def test_an_edited_denoiser_is_refused_naming_the_file(saved):
    Denoiser.load(saved)  # as saved: loads
    rewrite(saved / "denoiser.json", lambda s: s["spec"].__setitem__("max_cells", 7))
    with pytest.raises(ValueError, match=r"denoiser\.json was changed after the denoiser was saved"):
        Denoiser.load(saved)


def test_a_denoiser_with_other_weights_is_refused_naming_the_file(saved):
    (saved / "model" / "genes.txt").write_text("".join(f"{g}\n" for g in reversed(GENES)))
    with pytest.raises(ValueError, match=r"model/genes\.txt was changed after the denoiser was saved"):
        Denoiser.load(saved)


def test_a_denoiser_saved_before_checksums_loads_with_a_warning(saved):
    rewrite(saved / "denoiser.json", lambda s: s.pop("sha256"))
    with pytest.warns(UserWarning, match=r"denoiser\.json records no checksums"):
        Denoiser.load(saved)


def test_a_malformed_checksum_record_is_refused(saved):
    rewrite(saved / "denoiser.json", lambda s: s.__setitem__("sha256", "0" * 64))
    with pytest.raises(ValueError, match=r"denoiser\.json: its 'sha256' entry is not the one opencellplm writes"):
        Denoiser.load(saved)
    rewrite(saved / "denoiser.json", lambda s: s.__setitem__("sha256", {"files": {"../x": "0"}, "settings": "0"}))
    with pytest.raises(ValueError, match=r"denoiser\.json was changed after"):  # the record is covered too
        Denoiser.load(saved)
    from opencellplm.tasks._saved import _digest

    def outside(settings):
        settings.pop("sha256")
        files = {"../elsewhere.txt": "0" * 64}
        settings["sha256"] = {"files": files, "settings": _digest(settings, files)}

    rewrite(saved / "denoiser.json", outside)
    with pytest.raises(ValueError, match=r"denoiser\.json: '\.\./elsewhere\.txt' is not a file inside"):
        Denoiser.load(saved)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["recipe"].__setitem__("bogus", 1), r"'recipe' has unknown settings \['bogus'\]"),
        (lambda s: s.pop("pretrained"), r"the setting 'pretrained' is missing"),
        (lambda s: s.__setitem__("fine_tuned", "no"), r"'fine_tuned' has a value of the wrong type: 'no'"),
        (lambda s: s.__setitem__("spec", "abc"), r"'spec' must be an object of settings, not 'abc'"),
    ],
    ids=["unknown recipe key", "missing key", "wrong type", "spec not an object"],
)
def test_a_malformed_denoiser_is_refused_naming_the_file(saved, change, message):
    """Checksums removed (as an earlier version wrote them): each setting is still checked, naming the file."""
    rewrite(saved / "denoiser.json", lambda s: (s.pop("sha256"), change(s)))
    with pytest.warns(UserWarning, match="records no checksums"), pytest.raises(ValueError) as err:
        Denoiser.load(saved)
    assert str(err.value).startswith(str(saved / "denoiser.json")) and re.search(message, str(err.value))

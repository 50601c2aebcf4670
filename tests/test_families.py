"""The family records: one per family, read torch-free, agreeing with the catalog and the code they name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from studio import families, hub
from studio.catalog import load_catalog


def test_every_catalog_model_has_its_family_record_and_runs_the_record_pipeline():
    for spec in load_catalog():
        family = families.FAMILIES[spec.family]
        assert spec.pipeline == family.pipeline, spec.id
        assert spec.tasks == family.tasks


def test_each_record_names_modules_that_exist():
    for family in families.FAMILIES.values():
        assert importlib.util.find_spec(family.adapter) is not None, family.adapter
        assert importlib.util.find_spec(family.tiny) is not None, family.tiny
        assert family.denoisers


def test_the_families_that_take_loras():
    takes = {name for name, family in families.FAMILIES.items() if family.takes_loras}
    assert takes == {"sdxl", "flux", "chroma", "sana"}


def test_records_are_read_without_torch():
    probe = "import sys, studio.families, studio.hub, studio.speed; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_hub_reads_the_repos_the_record_names():
    catalog = load_catalog()
    cascade = catalog.get("stable-cascade")
    prior, decoder = hub.repo_loads(cascade)
    assert (prior.repo, prior.revision, prior.passed) == (cascade.prior_repo, None, ("image_encoder", "feature_extractor"))
    assert (decoder.repo, decoder.folders) == (cascade.repo, ("decoder", "scheduler", "vqgan"))
    flux = catalog.get("flux-schnell")
    assert hub.repo_loads(flux) == [hub.RepoLoad(flux.repo, flux.revision, flux.variant)]

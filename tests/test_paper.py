"""The side-by-side table of lesson 11 reads this cascade's column from the models and their cards."""

import json
import shutil

import pytest

from minimagen.cascade import Imagen
from minimagen.checkpoint import SHIPPED_DIR
from minimagen.paper import IMAGEN_STAGES, compare_with_imagen, format_table


@pytest.fixture(scope="module")
def shipped():
    return Imagen.from_pretrained(SHIPPED_DIR)


def test_the_table_counts_the_shipped_models_and_reads_their_cards(shipped):
    rows = {r[0]: r[1:] for r in compare_with_imagen(shipped, SHIPPED_DIR)}
    for stage in shipped.stages:
        card = json.loads((SHIPPED_DIR / f"{stage.name}.json").read_text())
        params = sum(p.numel() for p in stage.unet.parameters())
        assert params == card["parameters"]
        ours, theirs, ratio = rows[f"{stage.name}: training steps"]
        assert ours == f"{card['training']['steps']:,}" and theirs == "2,500,000"
        ratio_params = rows[f"{stage.name}: U-Net parameters"][2]
        assert ratio_params.rstrip("x").replace(",", "") == f"{IMAGEN_STAGES[stage.name]['parameters'] / params:.0f}"
    assert rows["token width"][:2] == ("384", "4096")
    table = compare_with_imagen(shipped, SHIPPED_DIR)
    lines = format_table(table).splitlines()
    column = lines[0].index("this cascade")  # every row's value starts under its header
    assert all(line[column:].startswith(row[1]) for line, row in zip(lines[1:], table))


def test_a_missing_card_names_the_stage(shipped, tmp_path):
    for name in ("base64", "sr256"):
        shutil.copy(SHIPPED_DIR / f"{name}.json", tmp_path)
    with pytest.raises(ValueError, match="sr1024"):
        compare_with_imagen(shipped, tmp_path)

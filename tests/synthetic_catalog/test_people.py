"""People and garments of the synthetic catalog (synthetic.people): seeds share no garment,
and every texture is used."""

from __future__ import annotations

from synthetic.people import TEXTURES, sample_garment


def test_seeds_give_disjoint_garments():
    first = [sample_garment(0, i) for i in range(60)]
    second = [sample_garment(1, i) for i in range(60)]
    assert not {g.id for g in first} & {g.id for g in second}
    assert not {(g.texture, g.colours) for g in first} & {(g.texture, g.colours) for g in second}
    assert not {g.colours[0] for g in first} & {g.colours[0] for g in second}
    assert {g.texture for g in first} == set(TEXTURES)  # every texture is used
    assert len({g.colours[0] for g in first}) == 60  # and garments of one seed differ too

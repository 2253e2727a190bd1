"""core/magnet.py: magnet URIs (BEP 9, BEP 53) parsed into a Magnet, or one MagnetError."""

from __future__ import annotations

import base64
import warnings

import libtorrent as lt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jstorrent_cli.core.magnet import Magnet, parse_magnet
from jstorrent_cli.core.metainfo import parse_magnet as reexported
from jstorrent_cli.errors import MagnetError

HASH = bytes(range(20))
HEX = HASH.hex()
B32 = base64.b32encode(HASH).decode()


def test_hex_info_hash_and_everything_else() -> None:
    uri = (
        f"magnet:?xt=urn:btih:{HEX.upper()}&dn=Some+File%20Name.iso"
        "&tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce&tr=http://b.example/a&tr=http://b.example/a"
        "&x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413&x.pe=host.example:1"
        "&ws=http%3A%2F%2Fseed.example%2Ffile&xs=http://s.example/x.torrent&as=http://a.example/y.torrent"
        "&so=0,2,4-6"
    )
    m = parse_magnet(uri)
    assert m.info_hash == HASH and m.info_hash_hex == HEX
    assert m.display_name == "Some File Name.iso"
    assert m.trackers == ("udp://tracker.example:6969/announce", "http://b.example/a")
    assert m.peers == (("10.0.0.1", 6881), ("2001:db8::1", 51413), ("host.example", 1))
    assert m.web_seeds == ("http://seed.example/file",)
    assert m.exact_sources == ("http://s.example/x.torrent",)
    assert m.acceptable_sources == ("http://a.example/y.torrent",)
    assert m.select_only == ((0, 0), (2, 2), (4, 6))
    assert [i for i in range(9) if m.selects(i)] == [0, 2, 4, 5, 6]


def test_base32_info_hash_either_case() -> None:
    assert parse_magnet(f"magnet:?xt=urn:btih:{B32}").info_hash == HASH
    assert parse_magnet(f"magnet:?xt=urn:btih:{B32.lower()}").info_hash == HASH


def test_minimal_link_defaults() -> None:
    m = parse_magnet(f"MAGNET:?XT=URN:BTIH:{HEX}")
    assert m == Magnet(info_hash=HASH)
    assert m.select_only is None and m.selects(12345)


def test_indexed_parameters_and_reexport() -> None:
    m = reexported(f"magnet:?xt.1=urn:btih:{HEX}&tr.1=http://a.example/&tr.2=http://b.example/")
    assert m.trackers == ("http://a.example/", "http://b.example/")


def test_hybrid_link_uses_its_btih() -> None:
    btmh = "1220" + "ab" * 32
    m = parse_magnet(f"magnet:?xt=urn:btmh:{btmh}&xt=urn:btih:{HEX}")
    assert m.info_hash == HASH


def test_same_hash_twice_is_fine() -> None:
    assert parse_magnet(f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{B32}").info_hash == HASH


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.com/?xt=urn:btih:" + HEX, "not a magnet URI"),
        ("magnet:xt=urn:btih:" + HEX, "not a magnet URI"),
        ("", "not a magnet URI"),
        ("magnet:?dn=x", "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:sha1:" + HEX, "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:btih:" + HEX[:-1], "39 characters"),
        ("magnet:?xt=urn:btih:" + HEX + "0", "41 characters"),
        ("magnet:?xt=urn:btih:" + "g" * 40, "not hexadecimal"),
        ("magnet:?xt=urn:btih:" + "1" * 32, "not base32"),
        ("magnet:?xt=urn:btih:", "0 characters"),
        ("magnet:?xt=urn:btmh:1220" + "ab" * 32, "v2-only magnet links are not supported yet"),
        (f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{'ff' * 20}", "several different info hashes"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=nohost", "bad peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:0", "bad peer port"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:65536", "bad peer port"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=::1:80", "bad peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&so=1,x", "bad file selection"),
        (f"magnet:?xt=urn:btih:{HEX}&so=5-2", "end is before the start"),
        (f"magnet:?xt=urn:btih:{HEX}&so=-1", "bad file selection"),
    ],
)
def test_bad_links(uri: str, message: str) -> None:
    with pytest.raises(MagnetError, match=message) as caught:
        parse_magnet(uri)
    assert "\n" not in str(caught.value)


def test_huge_selection_range_is_not_expanded() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}&so=0-999999999999")
    assert m.select_only == (
        (
            0,
            999_999_999_999,
        ),
    ) and m.selects(10**11)


@pytest.mark.parametrize("hash_text", [HEX, HEX.upper(), B32])
def test_agrees_with_libtorrent(hash_text: str) -> None:
    uri = f"magnet:?xt=urn:btih:{hash_text}&dn=name&tr=http://t.example/announce&x.pe=127.0.0.2:6881"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atp = lt.parse_magnet_uri(uri)
    m = parse_magnet(uri)
    assert str(atp.info_hashes.v1) == m.info_hash_hex
    assert atp.name == m.display_name
    assert list(atp.trackers) == list(m.trackers)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_magnet_or_a_magnet_error(text: str) -> None:
    for uri in (text, "magnet:?" + text, f"magnet:?xt=urn:btih:{HEX}&" + text):
        try:
            m = parse_magnet(uri)
        except MagnetError as err:
            assert str(err)
            continue
        assert len(m.info_hash) == 20
        for _host, port in m.peers:
            assert 0 < port <= 65535

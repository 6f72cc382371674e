"""The host's apt sources, read to find the Debian mirror the arm64 sysroot is fetched from."""

from exporter.targets.sysroot import _deb822_sources, _one_line_sources

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# a disabled stanza and a source-only one are not package sources
Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
"""


def test_deb822_stanzas_give_one_entry_per_uri_and_suite():
    key = "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert _deb822_sources(DEB822) == [
        ("http://mirror.example/debian", "bookworm", key),
        ("http://mirror.example/debian", "bookworm-updates", key),
    ]


def test_one_line_sources_keep_signed_by_and_skip_comments():
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb-src http://src.example/debian bookworm main\n"
    )
    assert _one_line_sources(text) == [
        ("http://a.example/debian", "bookworm", "/k.gpg"),
        ("http://security.example/debian-security", "bookworm-security", None),
    ]

"""GitLab's NuGet symbol file as a Geohost replicable type, written in Python.

A NuGet symbol (``Packages::Nuget::Symbol``, table ``packages_nuget_symbols``)
is one debugging symbol file (``.pdb``) of a NuGet symbol package, served by
GitLab's symbol server by its signature. Its blob lives at
``<object_storage_key>/<file>`` (``Packages::Nuget::SymbolUploader``: the store
dir is the key, the file keeps its name), where ``object_storage_key`` is
``HashedPath('packages', 'nuget', package_id, 'symbols', sha256(signature),
root_hash: project_id)``, set once when the record is created. Geo replicates
it by project (selective sync on ``project_id``).

Built by ``cargo xtask plugins`` with componentize-py into
``plugins/target/components/nuget-symbol.wasm``; its ``vectors.json`` is
embedded in the component.
"""

import re

import geohost
from geohost import Refused
from wit_world.imports import types as t
from wit_world import exports

VERSION = "1.0.0"

# A symbol's signature as the symbol server protocol has it: the PDB's GUID
# (32 hex digits) and its age or stamp (1 to 8 hex digits).
SIGNATURE = re.compile(r"[0-9A-Fa-f]{32}[0-9A-Fa-f]{1,8}")

# Positions of the writer columns in a `derive` batch (table order):
# package_id, file, file_path, signature, file_sha256, status, project_id.
PACKAGE_ID, FILE, SIGNATURE_COLUMN, PROJECT_ID = 0, 1, 3, 6


def check_file(name: str) -> None:
    """The symbol file's name: a `.pdb` file name, no folder."""
    if not name.lower().endswith(".pdb") or len(name) <= 4:
        raise Refused(f"invalid symbol file {name!r}: it must be a .pdb file name")
    if any(c in "/\\" or ord(c) < 32 for c in name):
        raise Refused(f"invalid symbol file {name!r}: no '/', '\\\\' or control characters")


def check_signature(signature: str) -> None:
    if not SIGNATURE.fullmatch(signature):
        raise Refused(
            f"invalid symbol signature {signature!r}: 32 hex digits (the PDB's GUID) "
            "and 1 to 8 more (its age)"
        )


def object_storage_key(project_id: int, package_id: int, signature: str) -> str:
    """HashedPath('packages', 'nuget', package_id, 'symbols', sha256(signature), root_hash: project_id)."""
    return geohost.hashed_path(
        str(project_id), "packages", "nuget", str(package_id), "symbols",
        geohost.sha256_hex(signature),
    )


class Replicable(exports.Replicable):
    def describe(self) -> t.Identity:
        col, T, S = geohost.column, t.ColumnType, t.ColumnSource
        return t.Identity(
            name="packages_nuget_symbol",
            title="NuGet Symbol",
            title_plural="NuGet Symbols",
            version=VERSION,
            mutable=False,
            uploader_class="Packages::Nuget::SymbolUploader",
            table=t.ModelTable(
                name="packages_nuget_symbols",
                # GitLab's column order (db/structure.sql).
                columns=[
                    *geohost.timestamps(),
                    col("package_id", T.BIGINT, False, S.WRITER),
                    col("size", T.INTEGER, False, S.BLOB_SIZE),
                    geohost.file_store(),
                    col("file", T.TEXT, False, S.WRITER, max_length=255),
                    col("file_path", T.TEXT, False, S.WRITER, max_length=255),
                    col("signature", T.TEXT, False, S.WRITER, max_length=255),
                    col("object_storage_key", T.TEXT, False, S.DERIVED, max_length=255),
                    col("file_sha256", T.BINARY, True, S.WRITER),
                    col("status", T.SMALLINT, False, S.WRITER, default=t.Value_Int(0)),
                    col("project_id", T.BIGINT, False, S.WRITER),
                ],
                natural_key=["signature", "file_path"],
                unique_keys=[["object_storage_key"]],
            ),
            path_columns=["object_storage_key", "file"],
            scope_columns=["project_id", "file_store"],
        )

    def derive(self, records: t.Batch) -> t.Derived:
        package_ids = geohost.ints(records, PACKAGE_ID, "package_id")
        files = geohost.texts(records, FILE, "file")
        signatures = geohost.texts(records, SIGNATURE_COLUMN, "signature")
        project_ids = geohost.ints(records, PROJECT_ID, "project_id")

        def one(row):
            check_file(files.get(row))
            signature = signatures.get(row)
            check_signature(signature)
            return [object_storage_key(project_ids.get(row), package_ids.get(row), signature)]

        return geohost.derived(records, one, [t.ColumnValues_Text])

    def blob_paths(self, records: t.Batch) -> t.Paths:
        keys = geohost.texts(records, 0, "object_storage_key")
        files = geohost.texts(records, 1, "file")
        return geohost.paths(records, lambda row: f"{keys.get(row)}/{files.get(row)}")

    def in_scope(self, settings: t.SyncSettings, records: t.Batch) -> t.Decisions:
        return geohost.project_scope(settings, records, 0, 1)

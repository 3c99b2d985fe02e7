"""File drops in a directory: CSV, JSON, XML and SAP IDoc exports from ERPs that cannot call out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.connector import Capability, ConnectorKind, SystemOptions

__all__ = ["CONNECTOR", "FileOptions"]


class Drop(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pattern: str = Field(description="Glob of the files, relative to the system's directory.", examples=["MATMAS*.xml"])
    format: Literal["csv", "json", "jsonl", "xml", "idoc"]
    encoding: str = Field("utf-8", examples=["utf-8", "cp1252", "iso-8859-1"])
    delimiter: str = Field(",", min_length=1, max_length=1)
    decimal_comma: bool = Field(False, description="Numbers written 1.234,50 (German-locale SAP exports).")
    record_path: str | None = Field(None, description="For XML/JSON: where the records are.")


class FileOptions(SystemOptions):
    directory: str = Field(description="Directory watched for drops; relative to the spec file or absolute.")
    archive: str = Field("archive", description="Where processed files are moved.")
    rejected: str = Field("rejected", description="Where unreadable files are moved, with a reason file.")
    poll: str = Field("10s", description="How often the directory is scanned when it cannot be watched.")
    drops: dict[str, Drop] = Field(default_factory=dict, description="Named kinds of file in the directory.")

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        if capability in ("read", "write"):
            return frozenset(self.drops)
        return frozenset()


CONNECTOR = ConnectorKind(
    name="file",
    options=FileOptions,
    description="CSV, JSON, XML and SAP IDoc files dropped in a directory",
    events=True,
)

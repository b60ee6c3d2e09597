"""Decodes an ExportProfilesServiceRequest with the OpenTelemetry Python
protos (an implementation independent of ours) and reports any field they do
not know, at any depth, plus a summary the Rust test compares."""

import json
import sys

from google.protobuf import unknown_fields
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2


def repeated(field):
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def unknown(message, path):
    found = []
    numbers = [f.field_number for f in unknown_fields.UnknownFieldSet(message)]
    if numbers:
        found.append(f"{path or '<request>'}: unknown field numbers {numbers}")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    found += unknown(item, f"{path}.{field.name}[{key!r}]")
        elif repeated(field):
            for i, item in enumerate(value):
                found += unknown(item, f"{path}.{field.name}[{i}]")
        else:
            found += unknown(value, f"{path}.{field.name}")
    return found


request = profiles_service_pb2.ExportProfilesServiceRequest()
with open(sys.argv[1], "rb") as f:
    request.ParseFromString(f.read())
samples = [
    s
    for rp in request.resource_profiles
    for sp in rp.scope_profiles
    for p in sp.profiles
    for s in p.samples
]
print(
    json.dumps(
        {
            "unknown": unknown(request, ""),
            "resources": len(request.resource_profiles),
            "samples": len(samples),
            "total": sum(sum(s.values) for s in samples),
            "strings": len(request.dictionary.string_table),
        }
    )
)

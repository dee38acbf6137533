#!/usr/bin/env sh
# Regenerate federation/kapacitor/_udf_pb2.py (and its type stub _udf_pb2.pyi) from federation/kapacitor/udf.proto.
#
# Uses grpcio-tools 1.62.3 (protoc 25.1) in a virtualenv of its own, so that the project's
# protobuf runtime is left alone: that protoc writes code without a runtime version check, which
# loads with every protobuf runtime the project supports (>= 4.25). PROTOC_PYTHON names a Python
# that already has grpcio-tools 1.62.3; otherwise one is set up in $PROTOC_VENV.
set -eu

cd "$(dirname "$0")/.."
venv="${PROTOC_VENV:-/tmp/protoc-venv}"
python="${PROTOC_PYTHON:-$venv/bin/python}"
if [ ! -x "$python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "grpcio-tools==1.62.3"
fi

"$python" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. federation/kapacitor/udf.proto
mv federation/kapacitor/udf_pb2.py federation/kapacitor/_udf_pb2.py
mv federation/kapacitor/udf_pb2.pyi federation/kapacitor/_udf_pb2.pyi
# The stub is read by mypy and linted with the package: bring it to the project's style.
ruff="${RUFF:-ruff}"
"$ruff" check --quiet --fix federation/kapacitor/_udf_pb2.pyi
"$ruff" format --quiet federation/kapacitor/_udf_pb2.pyi
echo "wrote federation/kapacitor/_udf_pb2.py and .pyi ($("$python" -m grpc_tools.protoc --version))"

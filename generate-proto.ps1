# Regenerate src/mxgateway/generated from proto/ (needs the [dev] extra installed).
$ErrorActionPreference = 'Stop'
Set-Location -Path $PSScriptRoot
$python = if ($env:PYTHON) { $env:PYTHON } else { 'python' }
& $python scripts/generate_proto.py @args
exit $LASTEXITCODE

#!/bin/sh
# Puts everything the fnmesh jobs read from Nomad Variables, from a setup written by
#   fnmesh nats init --dir SETUP --edge NAME=4222 [--edge ...] --hub-leaf-url nats-leaf://HUB:7422
# Usage: put-variables.sh SETUP
#
# One Nomad namespace `fnmesh` per Nomad region (create it once: `nomad namespace apply fnmesh`
# in each region). The hub runs in the Nomad region $FNMESH_HUB_NOMAD_REGION (default
# `global`); each edge NAME of the setup runs in the Nomad region NAME. Variables are kept per
# region, so the shared keys are put into each.
#
# Shared by the whole deployment (generated into SETUP on the first run, reused after):
#   secrets.key   FNMESH_SECRETS_KEY: gateways seal function secrets with it, nodes open them
#   jwt.secret    FNMESH_JWT_HS256_SECRET: a token one gateway issued is valid at every other
#   admin.key     FNMESH_ADMIN_KEY
#   metrics.token FNMESH_METRICS_TOKEN (scrapes of gateways and nodes)
#   signing.nk    (from nats init) the work signing key of every gateway; trusted.keys its
#                 public half, which every node trusts
# The hub's backends are external services, named in the environment:
#   FNMESH_DATABASE_URL (postgres://…), FNMESH_REDIS_URL, FNMESH_S3_ENDPOINT,
#   FNMESH_S3_REGION, FNMESH_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
# Node credentials are not put here: each machine keeps its own (see README.md).
set -eu

setup=${1:?usage: put-variables.sh SETUP (a directory written by fnmesh nats init --edge)}
test -f "$setup/hub.conf" || { echo "$setup/hub.conf missing: run fnmesh nats init --edge first" >&2; exit 1; }
: "${FNMESH_DATABASE_URL:?set FNMESH_DATABASE_URL (postgres://user:password@host:5432/db)}"
: "${FNMESH_REDIS_URL:?set FNMESH_REDIS_URL (redis://host:6379)}"
: "${FNMESH_S3_ENDPOINT:?set FNMESH_S3_ENDPOINT (http://host:3900)}"
: "${FNMESH_S3_BUCKET:?set FNMESH_S3_BUCKET (the code bucket, created beforehand)}"
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY}"
hub_region=${FNMESH_HUB_NOMAD_REGION:-global}
ns="-namespace fnmesh"

# Generated once, kept beside the NATS setup (mode 0600, like its seeds).
umask 077
test -f "$setup/secrets.key" || openssl rand -base64 32 > "$setup/secrets.key"
test -f "$setup/jwt.secret" || openssl rand -hex 32 > "$setup/jwt.secret"
test -f "$setup/admin.key" || openssl rand -hex 32 > "$setup/admin.key"
test -f "$setup/metrics.token" || openssl rand -hex 24 > "$setup/metrics.token"

# The operator and account JWTs every server preloads (public: JWTs, no seeds), and the
# FNMESH account an edge binds its leaf link to.
sed -n '/^operator:/,/^}/p' "$setup/hub.conf" > "$setup/accounts.conf"
fnmesh_account=$(sed -n 's/^ *account: *\(A[A-Z0-9]*\)$/\1/p' "$setup"/edge-*.conf | head -n 1)

# What every job of a region reads (nomad/jobs: readable by the namespace's jobs only).
shared() {
  nomad var put $ns -region "$1" nomad/jobs \
    nats_accounts=@"$setup/accounts.conf" \
    secrets_key=@"$setup/secrets.key" \
    trusted_keys=@"$setup/trusted.keys" \
    metrics_token=@"$setup/metrics.token"
}

# A gateway's own secrets (hub and edge gateways sign, issue tokens and admit alike).
gateway_keys() {
  printf 'admin_key=@%s jwt_secret=@%s signing_key=@%s nats_creds=@%s' \
    "$setup/admin.key" "$setup/jwt.secret" "$setup/signing.nk" "$setup/gateway.creds"
}

shared "$hub_region"
# shellcheck disable=SC2046 # the keys are words by design
nomad var put $ns -region "$hub_region" nomad/jobs/fnmesh-gateway $(gateway_keys) \
  database_url="$FNMESH_DATABASE_URL" redis_url="$FNMESH_REDIS_URL" \
  s3_endpoint="$FNMESH_S3_ENDPOINT" s3_region="${FNMESH_S3_REGION:-us-east-1}" \
  s3_bucket="$FNMESH_S3_BUCKET" s3_key_id="$AWS_ACCESS_KEY_ID" s3_secret="$AWS_SECRET_ACCESS_KEY"

for conf in "$setup"/edge-*.conf; do
  test -f "$conf" || continue
  edge=$(basename "$conf" .conf)
  edge=${edge#edge-}
  shared "$edge"
  nomad var put $ns -region "$edge" nomad/jobs/fnmesh-edge/nats \
    leaf_creds=@"$setup/leaf-$edge.creds" fnmesh_account="$fnmesh_account"
  # shellcheck disable=SC2046
  nomad var put $ns -region "$edge" nomad/jobs/fnmesh-edge/gateway $(gateway_keys)
done
echo "variables written for the hub ($hub_region) and the edges of $setup"

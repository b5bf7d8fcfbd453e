# fnmesh worker nodes: one per client machine (a system job). A node needs nothing but NATS:
# it pulls work from JetStream, fetches code from the region's NATS object store and reports
# results back over NATS — so the same job runs in an edge region whose machines only reach a
# local NATS leaf node (see nats-leaf.conf). Nodes create sandboxes (cgroups, namespaces), so
# the task is privileged.
# Every FNMESH_* variable here is checked against the binary by tests/tests/deploy_files.rs.
variable "region" {
  type    = string
  default = "local"
}

variable "nats_url" {
  type    = string
  default = "nats://127.0.0.1:4222"
}

variable "image" {
  type    = string
  default = "fnmesh:latest"
}

job "fnmesh-node" {
  type = "system"

  group "node" {
    task "node" {
      driver = "docker"

      config {
        image      = var.image
        command    = "fnmesh"
        args       = ["node"]
        privileged = true
      }

      # No FNMESH_NODE_ID: a node takes its id from its own NATS credentials.
      env {
        FNMESH_REGION          = var.region
        FNMESH_NATS_URL        = var.nats_url
        FNMESH_NATS_CREDS      = "/secrets/fnmesh.creds"
        FNMESH_NODE_SLOTS      = "16"
        FNMESH_HEARTBEAT_SECS  = "2"
        FNMESH_ACK_WAIT_SECS   = "30"
        FNMESH_DRAIN_SECS      = "30"
        FNMESH_LOG_FORMAT      = "json"
      }

      # This machine's own NATS credentials (`fnmesh nats add-node --id <client name>`), kept
      # in the variable nomad/jobs/fnmesh-node/<client name>: a node may write only its own
      # registry entry and read only its own inboxes.
      template {
        destination = "secrets/fnmesh.creds"
        data        = <<-EOT
          {{ with nomadVar (printf "nomad/jobs/fnmesh-node/%s" (env "node.unique.name")) }}{{ .nats_creds }}{{ end }}
        EOT
      }

      # The gateways' public work signing keys (`trusted.keys` of `fnmesh nats init`): a node
      # runs only work they signed.
      template {
        destination = "secrets/fnmesh-trusted.env"
        env         = true
        data        = "FNMESH_TRUSTED_KEYS={{ with nomadVar \"nomad/jobs/fnmesh-node\" }}{{ .trusted_keys }}{{ end }}"
      }

      # SIGTERM starts the drain: stop pulling, finish in-flight work, leave the registry.
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      resources {
        cpu    = 2000
        memory = 2048
      }
    }
  }
}

# The hub's NATS: a 3-server cluster (JetStream domain `hub`; the gateways create their streams
# and buckets R3, FNMESH_STREAM_REPLICAS=3) that edge servers dial as leaf nodes. The config is
# the hub.conf of `fnmesh nats init --edge` with a `cluster {}` block: the operator and account
# JWTs come from the Nomad variable nomad/jobs (put-variables.sh), the routes from Nomad's
# service discovery (the template re-renders, and NATS reloads, as servers come and go).
# Host networking on static ports: clients, routes and leaf links reach each server at its
# machine's address, one server per machine.
variable "nomad_region" {
  type    = string
  default = "global"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "nats:2.11.9-alpine" # fnmesh needs nats-server >= 2.11; alpine has wget for checks
}

job "fnmesh-nats-hub" {
  namespace   = "fnmesh"
  region      = var.nomad_region
  datacenters = var.datacenters
  type        = "service"

  group "nats" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    # One server at a time, and only once the restarted one is back in the cluster.
    update {
      max_parallel     = 1
      min_healthy_time = "20s"
      healthy_deadline = "3m"
      auto_revert      = true
    }

    network {
      mode = "host"
      port "client" {
        static = 4222
      }
      port "cluster" {
        static = 6222
      }
      port "leaf" {
        static = 7422
      }
      port "monitor" {
        static = 8222
      }
    }

    # JetStream's store survives a restart of the allocation on the same machine
    # (a host volume `fnmesh-nats` in each client's config).
    volume "data" {
      type   = "host"
      source = "fnmesh-nats"
    }

    service {
      name     = "fnmesh-nats"
      provider = "nomad"
      port     = "client"
      check {
        type     = "http"
        port     = "monitor"
        path     = "/healthz?js-enabled-only=true"
        interval = "5s"
        timeout  = "2s"
      }
    }

    service {
      name     = "fnmesh-nats-cluster"
      provider = "nomad"
      port     = "cluster"
    }

    service {
      name     = "fnmesh-nats-leaf"
      provider = "nomad"
      port     = "leaf"
    }

    task "nats" {
      driver = "docker"

      config {
        image        = var.image
        network_mode = "host"
        args         = ["-c", "${NOMAD_TASK_DIR}/hub.conf"]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      template {
        destination   = "local/hub.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          server_name: "hub-{{ env "NOMAD_ALLOC_INDEX" }}"
          host: "{{ env "NOMAD_IP_client" }}"
          port: {{ env "NOMAD_PORT_client" }}
          http_port: {{ env "NOMAD_PORT_monitor" }}
          {{ with nomadVar "nomad/jobs" }}{{ .nats_accounts }}{{ end }}
          jetstream {
            store_dir: "/data"
            domain: "hub"
            sync_interval: "always"
          }
          cluster {
            name: "fnmesh-hub"
            host: "{{ env "NOMAD_IP_cluster" }}"
            port: {{ env "NOMAD_PORT_cluster" }}
            routes: [
          {{- range nomadService "fnmesh-nats-cluster" }}
              "nats-route://{{ .Address }}:{{ .Port }}"
          {{- end }}
            ]
          }
          leafnodes {
            host: "{{ env "NOMAD_IP_leaf" }}"
            port: {{ env "NOMAD_PORT_leaf" }}
          }
        EOT
      }

      # SIGTERM: a clean shutdown; clients reconnect to the other servers. (Lame duck mode,
      # SIGUSR2, takes at least 30 s, more than Nomad's default maximum kill_timeout.)
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}

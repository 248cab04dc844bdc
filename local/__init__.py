"""Run the autostop control plane on this machine with no AWS account (moto, real handlers, real scripts)."""

# This file is maintained automatically by "terraform init".
# Manual edits may be lost in future updates.

provider "registry.terraform.io/hashicorp/google" {
  version     = "5.45.0"
  constraints = ">= 5.40.0, < 7.0.0"
  hashes = [
    "h1:12n6VlYvS6eu1V1vN7xwbMB2k8WFx96QB8NeFcpVNnM=",
  ]
}

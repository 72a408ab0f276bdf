// Pinned wrapper module: argocd-lua-health, our small runner of an Argo CD health.lua on
// gopher-lua v1.1.2 (the version Argo CD v3.6 embeds), built from the Go module proxy.
module local.invalid/carerix-operator/testbin/lua

go 1.26.0

require github.com/yuin/gopher-lua v1.1.2

// kubebin: one binary that is kube-apiserver, kube-controller-manager, kube-scheduler, kubelet or etcd,
// chosen by the name it is called by (a symlink) or by its first argument. One compile builds the whole
// control plane of the test cluster from the published Go modules (integration/cluster/build.sh).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if _, ok := components[name]; !ok && name != "etcd" && len(os.Args) > 1 {
		// kubebin <component> [flags]: the component sees itself as argv[0].
		name, args = os.Args[1], os.Args[1:]
	}
	if name == "etcd" {
		etcdmain.Main(args)
		return
	}
	newCommand, ok := components[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "usage: kubebin {kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|etcd} [flags]")
		os.Exit(2)
	}
	os.Args = args
	os.Exit(cli.Run(newCommand()))
}

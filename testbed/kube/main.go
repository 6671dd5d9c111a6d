// Command kube is a multi-call binary holding the control-plane components the
// test bed runs, each as its own process: one component per process, because
// the apiserver's signal handler panics if set up twice and feature gates are global.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]bool{
	"etcd": true, "kube-apiserver": true, "kube-scheduler": true, "kube-controller-manager": true, "kubectl": true,
}

func main() {
	// Called through a link named after a component (e.g. .local/bin/kubectl), or as `kube <component>`.
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if !components[name] {
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: kube {etcd|kube-apiserver|kube-scheduler|kube-controller-manager|kubectl} [flags]")
			os.Exit(2)
		}
		name, args = os.Args[1], os.Args[2:]
	}
	var command *cobra.Command
	switch name {
	case "etcd":
		// etcdmain parses os.Args itself, program name first.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return
	case "kube-apiserver":
		command = apiserver.NewAPIServerCommand()
	case "kube-scheduler":
		command = scheduler.NewSchedulerCommand()
	case "kube-controller-manager":
		command = controllermanager.NewControllerManagerCommand()
	case "kubectl":
		command = kubectl.NewDefaultKubectlCommand()
		command.SetArgs(args)
		if err := cli.RunNoErrOutput(command); err != nil {
			// Prints the error the way kubectl does and exits non-zero.
			cmdutil.CheckErr(err)
		}
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown component %q\n", name)
		os.Exit(2)
	}
	command.SetArgs(args)
	os.Exit(cli.Run(command))
}

// Command chargesim is one binary for every part of the EV-charging simulator: the simulated
// charger fleet (publisher), the ingest (listener), the REST API, an embedded MQTT broker,
// the Kubernetes operator, and `run`, which starts the whole pipeline on a laptop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/broker"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
	"github.com/chargesim/chargesim/components/stack"
	"github.com/chargesim/chargesim/controllers"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

var commands = []command{
	{"publisher", "simulated charger fleet publishing sessions over MQTT", publisher.Command},
	{"listener", "MQTT → MongoDB ingest: validate, store once, ack after store", listener.Command},
	{"api", "REST API over the stored sessions", restapi.Command},
	{"broker", "embedded MQTT broker (mochi-mqtt)", broker.Command},
	{"audit", "prove the store holds exactly the simulated sessions of a window", audit.Command},
	{"run", "broker + publisher + listener + API in one process (laptop)", stack.Command},
	{"operator", "Kubernetes operator reconciling ChargerSimulation resources", controllers.Command},
	{"version", "print the version", func(context.Context, []string) error { fmt.Println(version); return nil }},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "chargesim %s: EV charging station simulator and telemetry pipeline\n\nUsage: chargesim <command> [flags]\n\nCommands:\n", version)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'chargesim <command> --help' for a command's flags; every flag also reads CHARGESIM_<FLAG>.\n")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if version != "dev" {
		// The operator deploys the image of its own version unless told otherwise.
		controllers.ImageTag = version
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		default:
			fmt.Fprintf(os.Stderr, "chargesim %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "chargesim: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return 2
}

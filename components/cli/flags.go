// Package cli holds what every subcommand shares: flags with environment-variable
// equivalents, validation errors that name the setting, logging, and the operations HTTP
// server (/healthz, /readyz, /metrics).
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// EnvPrefix is prepended to every flag's environment-variable name.
const EnvPrefix = "CHARGESIM_"

// EnvName returns the environment variable that sets flag name: --mqtt-url → CHARGESIM_MQTT_URL.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// NewFlagSet returns a flag set for a subcommand whose --help lists each flag's variable.
func NewFlagSet(command, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: chargesim %s [flags]\n\n%s\n\nFlags (each also settable as an environment variable):\n", command, summary)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			fmt.Fprintf(w, "  --%s  [$%s]%s\n      %s\n", f.Name, EnvName(f.Name), def, f.Usage)
		})
	}
	return fs
}

// Parse parses args, then fills every flag not given on the command line from its
// environment variable. Errors name the bad setting.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := EnvName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("invalid %s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// Invalid is the error for a setting that parsed but does not make sense.
func Invalid(flagName string, value any, why string) error {
	return fmt.Errorf("invalid --%s=%v: %s", flagName, value, why)
}

// ReadSecret returns value, or the trimmed content of file when file is set. Secrets come
// from files (Secret volumes) or the environment so they never show in a pod spec's args.
func ReadSecret(flagName, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("invalid --%s-file: %w", flagName, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Common are the settings every long-running subcommand has.
type Common struct {
	LogLevel        string
	LogFormat       string
	HTTPAddr        string
	ShutdownTimeout time.Duration
}

// Register adds the common flags; httpAddr is the subcommand's default listen address.
func (c *Common) Register(fs *flag.FlagSet, httpAddr string) {
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.HTTPAddr, "http-addr", httpAddr, "listen address of the HTTP server (/healthz, /readyz, /metrics)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "grace period for flushing on shutdown")
}

// Validate checks the common settings.
func (c *Common) Validate() error {
	if _, err := parseLevel(c.LogLevel); err != nil {
		return Invalid("log-level", c.LogLevel, err.Error())
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		return Invalid("log-format", c.LogFormat, "must be json or text")
	}
	if c.ShutdownTimeout <= 0 {
		return Invalid("shutdown-timeout", c.ShutdownTimeout, "must be > 0")
	}
	return nil
}

// Logger builds the slog logger the settings ask for.
func (c *Common) Logger(w io.Writer, component string) (*slog.Logger, error) {
	return newLogger(w, c.LogLevel, c.LogFormat, component)
}

package controllers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// The managed broker's credentials: a Secret <sim>-broker-credentials the operator generates
// and controls. The broker reads the accepted passwords from a mounted file it re-reads when
// the kubelet updates it; publisher and listener read username and password. The API gets
// nothing (it does not speak MQTT).
const (
	// AnnotationRotateBrokerCredentials on a simulation asks for new broker credentials: set
	// it to any new value (a timestamp, a ticket number); each new value rotates once.
	AnnotationRotateBrokerCredentials = "chargesim.io/rotate-broker-credentials"

	// On the Secret: the rotation token last acted on, the rotation phase and since when.
	annotationRotationToken = "chargesim.io/rotation-token"
	annotationRotationPhase = "chargesim.io/rotation-phase"
	annotationRotationSince = "chargesim.io/rotation-since"

	// Rotation phases (annotationRotationPhase); none when no rotation is under way.
	// phaseAccepting: the broker accepts the new and the old password, the clients still use
	// the old one; it lasts until every kubelet has had time to update the broker's file.
	phaseAccepting = "accepting-both"
	// phaseSwitched: the clients roll onto the new password; the broker still accepts the old
	// one until the last client pod of the old revision is gone.
	phaseSwitched = "clients-switched"

	// Keys of the credentials Secret.
	CredentialsUsernameKey = "username"
	CredentialsPasswordKey = "password"                         //nolint:gosec // a key name, not a credential
	CredentialsAcceptedKey = "accepted-passwords"               //nolint:gosec // a key name, not a credential
	brokerUsername         = "chargesim"                        // not secret; the password is
	defaultCredentialDelay = 2 * time.Minute                    // see Reconciler.CredentialPropagation
	brokerCredentialsField = "the managed broker's credentials" // for messages
)

// BrokerCredentialsName is the name of the Secret holding a simulation's managed-broker
// credentials.
func BrokerCredentialsName(sim string) string { return sim + "-broker-credentials" }

// credentialsRef is the Secret publisher and listener authenticate with: the generated one for
// a managed broker, the user's for an external one (or none).
func credentialsRef(sim *v1alpha1.ChargerSimulation) *v1alpha1.CredentialsSecretRef {
	if sim.Spec.Broker.IsManaged() {
		return &v1alpha1.CredentialsSecretRef{Name: BrokerCredentialsName(sim.Name),
			UsernameKey: CredentialsUsernameKey, PasswordKey: CredentialsPasswordKey}
	}
	return sim.Spec.Broker.CredentialsSecretRef
}

// newPassword is 256 random bits, URL-safe (no newline, no character a shell or a URL mangles).
func newPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate broker password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// credentialPropagation is how long the broker's kubelet may take to update a mounted Secret.
func (r *Reconciler) credentialPropagation() time.Duration {
	if r.CredentialPropagation > 0 {
		return r.CredentialPropagation
	}
	return defaultCredentialDelay
}

// ensureBrokerCredentials creates the managed broker's credentials Secret, and drives a
// rotation the simulation asks for. It returns when to look again (a rotation waiting for the
// kubelets). A Secret of that name the simulation does not control is a NameConflict: never
// overwritten.
//
// A rotation never restarts the broker (its queues live on the pod's emptyDir) and never
// refuses a client that was following the protocol:
//
//  1. accepting-both: accepted-passwords = new + old, password (the clients') = old. The broker
//     re-reads its mounted file; nothing rolls. Held for credentialPropagation, the time a
//     kubelet takes to update a Secret volume.
//  2. clients-switched: password = new. The clients' config hash changes: publisher and
//     listener roll one pod at a time (QoS 1, persistent sessions: a listener's queue waits on
//     the broker while it restarts), and each new pod logs in with the new password, which
//     the broker accepts by now. Old pods keep their connections (the broker checks only new
//     connections) and, if they reconnect, the old password is still accepted.
//  3. Once both StatefulSets have rolled out (finishRotation): accepted-passwords = new.
func (r *Reconciler) ensureBrokerCredentials(ctx context.Context, sim *v1alpha1.ChargerSimulation) (time.Duration, error) {
	if !sim.Spec.Broker.IsManaged() {
		return 0, nil
	}
	key := types.NamespacedName{Namespace: sim.Namespace, Name: BrokerCredentialsName(sim.Name)}
	sec := &corev1.Secret{}
	err := r.APIReader.Get(ctx, key, sec)
	token := sim.Annotations[AnnotationRotateBrokerCredentials]
	if apierrors.IsNotFound(err) {
		pw, err := newPassword()
		if err != nil {
			return 0, err
		}
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name: key.Name, Namespace: key.Namespace,
				Labels: objectLabels(sim.Name, Broker),
				// A simulation created with the annotation already set has nothing to rotate.
				Annotations: map[string]string{annotationRotationToken: token},
			},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{
				CredentialsUsernameKey: []byte(brokerUsername),
				CredentialsPasswordKey: []byte(pw),
				CredentialsAcceptedKey: []byte(pw + "\n"),
			},
		}
		if err := ctrl.SetControllerReference(sim, sec, r.Client.Scheme()); err != nil {
			return 0, fmt.Errorf("own Secret %s: %w", key, err)
		}
		if err := r.Client.Create(ctx, sec); err != nil {
			return 0, fmt.Errorf("create Secret %s: %w", key, err)
		}
		ctrl.LoggerFrom(ctx).Info("generated the managed broker's credentials", "secret", key.Name)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("get Secret %s: %w", key, err)
	}
	if !metav1.IsControlledBy(sec, sim) {
		return 0, nameConflict("Secret", key, sec)
	}
	if len(sec.Data[CredentialsPasswordKey]) == 0 || len(sec.Data[CredentialsAcceptedKey]) == 0 || len(sec.Data[CredentialsUsernameKey]) == 0 {
		// Hand-edited into something unusable: start over with a fresh password, as a
		// rotation would (the old one, if any, stays accepted while the clients switch).
		return r.beginRotation(ctx, sim, sec, sec.Annotations[annotationRotationToken])
	}
	ann := sec.Annotations
	since, _ := time.Parse(time.RFC3339, ann[annotationRotationSince])
	switch ann[annotationRotationPhase] {
	case "":
		if token != ann[annotationRotationToken] {
			return r.beginRotation(ctx, sim, sec, token)
		}
	case phaseAccepting:
		if left := r.credentialPropagation() - time.Since(since); left > 0 {
			return left, nil
		}
		newPW := strings.SplitN(string(sec.Data[CredentialsAcceptedKey]), "\n", 2)[0]
		sec.Data[CredentialsPasswordKey] = []byte(newPW)
		return 0, r.updateCredentials(ctx, sec, phaseSwitched)
	}
	return 0, nil
}

// beginRotation starts phase 1: a new password accepted next to the current one.
func (r *Reconciler) beginRotation(ctx context.Context, sim *v1alpha1.ChargerSimulation, sec *corev1.Secret, token string) (time.Duration, error) {
	pw, err := newPassword()
	if err != nil {
		return 0, err
	}
	accepted := pw + "\n"
	if old := strings.TrimSpace(string(sec.Data[CredentialsPasswordKey])); old != "" {
		accepted += old + "\n"
	}
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[CredentialsUsernameKey] = []byte(brokerUsername)
	sec.Data[CredentialsAcceptedKey] = []byte(accepted)
	if len(sec.Data[CredentialsPasswordKey]) == 0 {
		sec.Data[CredentialsPasswordKey] = []byte(pw)
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[annotationRotationToken] = token
	if err := r.updateCredentials(ctx, sec, phaseAccepting); err != nil {
		return 0, err
	}
	r.Recorder.Eventf(sim, nil, corev1.EventTypeNormal, "CredentialsRotating", "Rotate",
		"rotating the managed broker's credentials: the broker accepts the new password next to the old one; the clients switch in %s", r.credentialPropagation())
	return r.credentialPropagation(), nil
}

// updateCredentials writes sec in the given phase. The update carries the resourceVersion
// read: two reconciles cannot both start a rotation with different passwords.
func (r *Reconciler) updateCredentials(ctx context.Context, sec *corev1.Secret, phase string) error {
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	if phase == "" {
		delete(sec.Annotations, annotationRotationPhase)
		delete(sec.Annotations, annotationRotationSince)
	} else {
		sec.Annotations[annotationRotationPhase] = phase
		sec.Annotations[annotationRotationSince] = time.Now().UTC().Format(time.RFC3339)
	}
	if err := r.Client.Update(ctx, sec); err != nil {
		return fmt.Errorf("update Secret %s/%s (rotation phase %q): %w", sec.Namespace, sec.Name, phase, err)
	}
	ctrl.LoggerFrom(ctx).Info("broker credentials rotation", "secret", sec.Name, "phase", orString(phase, "done"))
	return nil
}

// finishRotation ends phase 2 once publisher and listener have rolled out onto the new
// password: from then on the broker accepts only it.
func (r *Reconciler) finishRotation(ctx context.Context, sim *v1alpha1.ChargerSimulation, obs *observation) error {
	if !sim.Spec.Broker.IsManaged() {
		return nil
	}
	for _, c := range []Component{Publisher, Listener} {
		// A publisher held back for a listener does not exist yet: it holds no old password.
		held := c == Publisher && obs.waitingForListener
		if o, ok := obs.components[c]; (!ok || !o.complete) && !held {
			return nil
		}
	}
	key := types.NamespacedName{Namespace: sim.Namespace, Name: BrokerCredentialsName(sim.Name)}
	sec := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, key, sec); err != nil {
		return fmt.Errorf("get Secret %s: %w", key, err)
	}
	if sec.Annotations[annotationRotationPhase] != phaseSwitched || !metav1.IsControlledBy(sec, sim) {
		return nil
	}
	sec.Data[CredentialsAcceptedKey] = append([]byte(strings.TrimSpace(string(sec.Data[CredentialsPasswordKey]))), '\n')
	if err := r.updateCredentials(ctx, sec, ""); err != nil {
		return err
	}
	r.Recorder.Eventf(sim, nil, corev1.EventTypeNormal, "CredentialsRotated", "Rotate",
		"the managed broker's credentials are rotated: publisher and listener use the new password, the old one is refused")
	return nil
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
